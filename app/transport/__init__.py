"""The worker's side of the wire: the gunicorn worker class (`worker`), and a streamed body's events
written to the client's socket by the request's greenlet (`socket_body`) or, for plain tokens, by the
upstream poller's tick (`direct`)."""
