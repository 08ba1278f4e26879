"""``python -m learngn ...``: the same command line as the ``learngn`` console script."""
from .cli import run_and_exit

if __name__ == "__main__":
    run_and_exit()
