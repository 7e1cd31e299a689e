"""Who may talk to the coordinator: TLS on both its ports, and role tokens.

Two independent layers, each off unless configured, so local use needs
nothing:

- **TLS** (:mod:`.tls`): the coordinator serves gRPC and HTTP over TLS with
  its certificate (``--tls-cert/--tls-key``); with ``--tls-client-ca`` every
  gRPC client must also present a certificate that CA signed (mutual TLS).
  Clients trust ``--tls-ca``. A failed handshake is explained in one line by
  a diagnostic handshake (:func:`.tls.diagnose`), since gRPC does not say why.
  :mod:`.certs` makes a CA and certificates for local use (``fractalq certs``).
- **Tokens** (:mod:`.tokens`; checked at the coordinator's doors by
  :mod:`fractalq.coordinator.auth`): ``--auth-tokens FILE`` lists
  ``ROLE TOKEN`` lines; every call carries ``authorization: Bearer TOKEN``
  and the role decides which calls it may make (workers the worker calls,
  clients submit and cancel and read, readers read). Tokens are compared in
  constant time and never logged. The health service, ``/healthz`` and
  ``/metrics`` stay open for the kubelet and Prometheus, which carry none.

Tokens work without TLS too (gRPC refuses call credentials on a plaintext
channel, so clients add the header with an interceptor, see
:mod:`fractalq.endpoint`), but then travel in clear text: use both.
"""

from __future__ import annotations

from fractalq.security.tls import ClientTLS, ServerTLS, diagnose
from fractalq.security.tokens import Role, TokenTable, read_token_file

__all__ = ["ClientTLS", "Role", "ServerTLS", "TokenTable", "diagnose", "read_token_file"]
