"""`python -m demo` (what `make demo` runs): see demo/launcher.py."""

from demo.launcher import main

main()
