"""``python -m mtan.data.synthetic``: see :mod:`mtan.data.synthetic.cli`."""
import sys

from mtan.data.synthetic.cli import main

sys.exit(main())
