"""framestream.stream.options: one typed, validated options object."""

from __future__ import annotations

import dataclasses

import pytest

from framestream import DatasetConfig, StreamingLeRobotDataset, StreamOptions
from framestream.stream.options import option_docs


def test_defaults_and_frozen():
    o = StreamOptions()
    assert (o.buffer_size, o.active_shards, o.on_error) == (1000, None, "raise")  # None: auto
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.buffer_size = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"buffer_size": 0}, "buffer_size must be >= 1"),
        ({"on_error": "ignore"}, "on_error"),
        ({"video_backend": "ffmpeg"}, "video_backend"),
        ({"tolerance_s": -1.0}, "tolerance_s"),
        ({"active_shards": 2.5}, "active_shards"),
        ({"shuffle": "maybe"}, "shuffle"),
    ],
)
def test_bad_values_name_the_option(kw, message):
    with pytest.raises(ValueError, match=message):
        StreamOptions(**kw)


def test_strings_from_config_files_are_converted():
    o = StreamOptions(shuffle="false", buffer_size="12", video_decoder_cache_size="none")
    assert (o.shuffle, o.buffer_size, o.video_decoder_cache_size) == (False, 12, None)


def test_memory_budget_takes_sizes_auto_and_none():
    assert StreamOptions().memory_budget == "auto"
    for text, want in (("AUTO", "auto"), ("512MB", 512 << 20), ("none", None), (1 << 21, 1 << 21)):
        assert StreamOptions(memory_budget=text).memory_budget == want
    for bad in ("lots", 5, -1):
        with pytest.raises(ValueError, match="memory_budget"):
            StreamOptions(memory_budget=bad)


def test_build_refuses_unknown_names():
    with pytest.raises(TypeError, match="buffer_sise"):
        StreamOptions.build(buffer_sise=3)
    base = StreamOptions(seed=4)
    assert StreamOptions.build(base, shuffle=False) == StreamOptions(seed=4, shuffle=False)
    assert StreamOptions.build(base) is base


def test_config_fields_come_from_the_options():
    names = {f.name for f in dataclasses.fields(DatasetConfig)}
    for f in dataclasses.fields(StreamOptions):
        renamed = f"streaming_{f.name}" if f"streaming_{f.name}" in names else f.name
        assert renamed in names, f.name
        cfg_field = next(g for g in dataclasses.fields(DatasetConfig) if g.name == renamed)
        assert cfg_field.default == f.default
        assert cfg_field.metadata["doc"] == f.metadata["doc"]
    assert DatasetConfig(streaming_buffer_size=7).stream_options().buffer_size == 7
    assert (
        "reservoir" in option_docs()["buffer_size"]
        and "default: 1000" in option_docs()["buffer_size"]
    )


def test_dataset_takes_options_and_keywords(small_root):
    ds = StreamingLeRobotDataset(str(small_root), options=StreamOptions(seed=3), buffer_size=9)
    # the dataset resolves active_shards=None (32 pieces for one frame per camera)
    assert ds.options == StreamOptions(seed=3, buffer_size=9, active_shards=32)
    assert ds.buffer_size == 9  # options read as attributes too
    with pytest.raises(TypeError, match="unknown stream option"):
        StreamingLeRobotDataset(str(small_root), bufer_size=9)


def test_meta_and_source_options_cannot_both_be_given(small_root):
    ds = StreamingLeRobotDataset(str(small_root))
    with pytest.raises(ValueError, match="storage_options"):
        StreamingLeRobotDataset(meta=ds.meta, storage_options={"anon": True})
    with pytest.raises(ValueError, match="name different datasets"):
        StreamingLeRobotDataset("/somewhere/else", meta=ds.meta)
    assert StreamingLeRobotDataset(meta=ds.meta).meta is ds.meta
