"""framestream.validate: `framestream validate`: every check of a dataset, as a report.

Private; the entry point is :func:`framestream.validate.dataset.validate_dataset`.
"""
