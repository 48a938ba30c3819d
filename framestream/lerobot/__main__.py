"""``python -m framestream.lerobot ARGS`` = ``lerobot-train ARGS`` on framestream's datasets."""

from framestream.lerobot import main

if __name__ == "__main__":
    main()
