import sys

from ssl_pipeline.cli.main import main

sys.exit(main())
