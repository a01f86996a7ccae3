import sys

from milcompress.tools.cli import main

sys.exit(main())
