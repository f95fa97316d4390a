import sys

from qpu_broker.cli.main import main

sys.exit(main())
