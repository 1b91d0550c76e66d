"""Every nats-py internal osapi relies on, in one place.

nats-py has no public way to do three things osapi needs, so this module reaches
into its objects, and only this module does:

* make a KV handle without the round trip of ``js.key_value()`` (the
  ``KeyValue`` constructor: bucket, stream, subject prefix, direct gets);
* read a handle's stream name and subject prefix (``KeyValue._stream``,
  ``KeyValue._pre``), to list and batch-read its keys as subjects;
* take the messages a pull subscription holds in its queue after the last
  ``fetch`` gave up (``PullSubscription._sub`` -> ``Subscription._pending_queue``),
  to hand them back at stop instead of letting them wait ``ack_wait``.
* send a token *and* a user/password in one CONNECT (``Client._connect_command``,
  ``token_and_user_client``): the control plane's credential works against a
  nats-server that requires a bare token and against one whose ``users`` list
  holds the control plane's user with the token as its password (osapi.fleet.auth).

``missing_internals`` names what a nats-py release no longer has;
tests/integration/test_job_natsadapter.py checks it on real objects from a real
nats-server, so an upgrade that changes them fails there, by name.
"""

from __future__ import annotations

from typing import Any, Iterator

KV_ATTRIBUTES = ("_stream", "_pre")  # on nats.js.kv.KeyValue
PULL_SUBSCRIPTION_ATTRIBUTE = "_sub"  # on JetStreamContext.PullSubscription: the core Subscription
SUBSCRIPTION_QUEUE_ATTRIBUTE = "_pending_queue"  # on nats.aio.subscription.Subscription: an asyncio.Queue


CONNECT_COMMAND = "_connect_command"  # on nats.aio.client.Client: the CONNECT line it sends


def token_and_user_client(user: str):
    """A nats-py ``Client`` whose CONNECT also carries ``user`` with the token as its password once
    ``send_user`` is set (its owner sets it when the server refused the bare token).

    nats-server checks the one its configuration asks for: ``auth_token`` under a
    bare ``token``, ``user``/``pass`` under a ``users`` list. The bare token comes
    first because a token server treats a client that also names a user
    differently at a reload with another token: it drops it without the
    ``Authorization Violation`` that makes nats-py close the connection for good.
    """
    import json

    from nats.aio.client import Client

    class TokenAndUserClient(Client):
        send_user = False

        def _connect_command(self) -> bytes:
            command = super()._connect_command()
            if not self.send_user:
                return command
            verb, _, rest = command.partition(b" ")
            try:
                options = json.loads(rest)
            except ValueError:
                return command
            token = options.get("auth_token")
            if not token or "user" in options:
                return command
            options.update(user=user, **{"pass": token})
            return verb + b" " + json.dumps(options, sort_keys=True).encode() + b"\r\n"

    return TokenAndUserClient()


def kv_handle(js, bucket: str, stream: str, direct: bool):
    """A ``KeyValue`` for ``bucket`` (stored in ``stream``, keys under ``$KV.<bucket>.``), no round trip."""
    from nats.js.kv import KeyValue

    return KeyValue(name=bucket, stream=stream, pre=f"$KV.{bucket}.", js=js, direct=direct)


def kv_stream(kv) -> str:
    """The stream that stores the bucket of ``kv``."""
    return kv._stream


def kv_prefix(kv) -> str:
    """The subject prefix of ``kv``'s keys (``$KV.<bucket>.``): a key's subject is prefix + key."""
    return kv._pre


def queued_messages(pull_sub) -> Iterator:
    """Take, one at a time, the messages waiting in ``pull_sub``'s queue (delivered after a fetch
    stopped waiting), until it is empty; one that arrives meanwhile is taken too.

    Nothing when there are none or when this nats-py keeps them elsewhere (the
    test of this module fails in that case).
    """
    queue = getattr(getattr(pull_sub, PULL_SUBSCRIPTION_ATTRIBUTE, None), SUBSCRIPTION_QUEUE_ATTRIBUTE, None)
    while queue is not None and not queue.empty():
        yield queue.get_nowait()


def missing_internals(kv: Any = None, pull_sub: Any = None) -> list[str]:
    """The internals this module uses that ``kv`` / ``pull_sub`` lack, as ``Class.attribute``; [] when all are there."""
    missing: list[str] = []
    from nats.aio.client import Client

    if not callable(getattr(Client, CONNECT_COMMAND, None)):
        missing.append(f"Client.{CONNECT_COMMAND}")
    if kv is not None:
        missing += [f"{type(kv).__name__}.{name}" for name in KV_ATTRIBUTES
                    if not isinstance(getattr(kv, name, None), str)]
    if pull_sub is not None:
        core = getattr(pull_sub, PULL_SUBSCRIPTION_ATTRIBUTE, None)
        if core is None:
            missing.append(f"{type(pull_sub).__name__}.{PULL_SUBSCRIPTION_ATTRIBUTE}")
        else:
            queue = getattr(core, SUBSCRIPTION_QUEUE_ATTRIBUTE, None)
            if not (callable(getattr(queue, "empty", None)) and callable(getattr(queue, "get_nowait", None))):
                missing.append(f"{type(core).__name__}.{SUBSCRIPTION_QUEUE_ATTRIBUTE}")
    return missing
