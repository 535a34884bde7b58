"""The data plane: the HTTP/1.1 gateway that forwards requests to session backends.

`server.Gateway` owns the listener and the connections; `client` parses what
clients send (httptools) and forwards it; `upstream` talks to backends;
`activator` holds requests while their session wakes.
"""
