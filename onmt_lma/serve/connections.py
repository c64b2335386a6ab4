"""Connections that cannot hold the server: uvicorn's HTTP/1.1 protocol with a deadline for each request's
headers.

uvicorn closes a keep-alive connection that stays idle after a response (``timeout_keep_alive``), but a
new connection that sends nothing, or sends its headers a byte at a time, is kept open for ever: enough
such clients hold every file descriptor.  Here every connection must deliver a whole request head within
``header_timeout`` seconds of opening (or of its previous response), else it is closed.  A body that stops
half-way is the application's (its read timeout: :func:`onmt_lma.serve.app.read_body`).
"""

from uvicorn.protocols.http.h11_impl import H11Protocol

#: seconds a connection has to send a request's headers
HEADER_TIMEOUT_S = 10.0


def header_timeout_protocol(timeout=HEADER_TIMEOUT_S):
    """A uvicorn ``http`` protocol class: :class:`H11Protocol` with a ``timeout``-second header deadline."""

    class HeaderDeadlineProtocol(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._header_deadline = None
            self._arm()

        def _arm(self):
            self._disarm()
            self._header_deadline = self.loop.call_later(timeout, self._expired)

        def _disarm(self):
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _waiting_for_head(self):
            return self.cycle is None or self.cycle.response_complete

        def _expired(self):
            self._header_deadline = None
            if self._waiting_for_head() and not self.transport.is_closing():
                self.transport.close()

        def handle_events(self):
            super().handle_events()
            if not self._waiting_for_head():  # a whole head arrived: the request is the application's now
                self._disarm()

        def on_response_complete(self):
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadlineProtocol
