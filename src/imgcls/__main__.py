"""`python -m imgcls` (and `torchrun -m imgcls`) run the command line."""

from imgcls.cli import main

main()
