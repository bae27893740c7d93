"""``python -m mailpipe.cli``: the ``mailpipe`` command without the console script."""

from mailpipe.cli import main

main()
