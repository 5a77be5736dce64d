import sys

from gpt124m.cli import main

sys.exit(main())
