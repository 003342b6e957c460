"""python -m fastapi_dbpool top URL."""

import sys

from fastapi_dbpool._top import main

if __name__ == "__main__":
    if sys.argv[1:2] != ["top"]:
        sys.exit("usage: python -m fastapi_dbpool top URL [--interval SECONDS] [--once]")
    sys.exit(main(sys.argv[2:]))
