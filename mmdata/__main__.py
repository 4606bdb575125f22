import sys

from mmdata.cli import main

if __name__ == "__main__":  # not when a worker process of a local pool imports the main module
    sys.exit(main())
