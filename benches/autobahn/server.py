# Python 2.7: runs inside the autobahntestsuite virtualenv (see run.sh).
#
# Autobahn|Testsuite's own server, the backend of the conformance run, started the
# way `wstest -m echoserver -w URL` (or `-m testeeserver`) starts it, with two
# changes:
#
#  1. The Host-port check is off. autobahn 0.10.9's WebSocketServerProtocol.
#     processHandshake (autobahn/websocket/protocol.py) fails the opening
#     handshake when the port in the request's Host header is not the factory's
#     `externalPort`, which setSessionParameters sets from the URL's port. A
#     handshake through a proxy names the proxy's port, so every proxied
#     handshake would be refused ("port P in HTTP Host header ... does not match
#     server listening port"). The check only runs when externalPort is set
#     ("do port checking only if externalPort or URL was set"), so the factory's
#     externalPort is set to None here. Nothing in the installed package is edited.
#  2. It listens on the URL's host only (wstest binds every interface).
#
# Usage: python server.py echoserver|testeeserver ws://127.0.0.1:PORT
#   echoserver    autobahntestsuite.echo.EchoServerFactory (the backend):
#                 echoes each message; no compression extension (cases 12.* and
#                 13.* end UNIMPLEMENTED); drops the TCP connection on a protocol
#                 error (failByDrop, autobahn's default)
#   testeeserver  autobahntestsuite.testee.TesteeServerFactory: echoes too, and
#                 accepts permessage-deflate (12.* and 13.* really run) and
#                 closes with a close frame on a protocol error (failByDrop off)
import sys

from autobahntestsuite import choosereactor  # noqa: F401  first, as in wstest (epoll)
from twisted.internet import reactor
from autobahn.twisted.websocket import listenWS


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("echoserver", "testeeserver"):
        sys.stderr.write("usage: server.py echoserver|testeeserver ws://HOST:PORT\n")
        return 2
    mode, url = sys.argv[1], sys.argv[2]
    if mode == "echoserver":
        from autobahntestsuite.echo import EchoServerFactory
        factory = EchoServerFactory(url)
    else:
        from autobahntestsuite.testee import TesteeServerFactory
        factory = TesteeServerFactory(url)
    factory.externalPort = None  # the Host-port check off (see above)
    listenWS(factory, interface=factory.host)
    sys.stdout.write("%s on %s, Host-port check off\n" % (mode, url))
    sys.stdout.flush()
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
