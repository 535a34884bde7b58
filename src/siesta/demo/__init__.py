"""The small demo backend that ``siesta demo`` starts for each session (see ``app``)."""
