import sys

from mmdata.cli import main

sys.exit(main())
