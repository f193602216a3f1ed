import sys

from wnjax._cli import main

sys.exit(main())
