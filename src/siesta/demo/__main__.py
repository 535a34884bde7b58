"""Entry point: ``python -m siesta.demo --port PORT --session ID [--base-url /s/ID/]``."""

from siesta.demo import app

if __name__ == "__main__":
    app.main()
