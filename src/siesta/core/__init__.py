"""Pure decisions: no I/O, no imports from the rest of siesta.

Used by the gateway (routing), the lifecycle runner (allowed transitions) and the
controller (when a session is due). Everything here is a function of data and time.
"""
