"""`python -m slimbench ...`"""
from slimbench.cli import main

raise SystemExit(main())
