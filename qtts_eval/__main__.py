import sys

from qtts_eval.cli import main

sys.exit(main())
