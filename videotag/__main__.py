"""`python -m videotag ...` == `videotag ...`."""

from videotag.cli import main

main()
