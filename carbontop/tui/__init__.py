"""The Textual app that `carbontop` opens. Import `carbontop.tui.app` for `run_app`."""
