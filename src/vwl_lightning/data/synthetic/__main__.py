"""``python -m vwl_lightning.data.synthetic``: see :mod:`vwl_lightning.data.synthetic.cli`."""

import contextlib
import logging

from vwl_lightning.data.synthetic.cli import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with contextlib.suppress(BrokenPipeError):
        raise SystemExit(main())
