import sys

from harness.peers.cli import main

sys.exit(main())
