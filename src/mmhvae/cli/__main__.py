import sys

from mmhvae.cli.main import main

sys.exit(main())
