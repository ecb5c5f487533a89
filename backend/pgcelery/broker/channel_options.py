"""The broker's transport options: their names, defaults and what each one means.

``broker_transport_options`` entries named in :attr:`ChannelOptions.from_transport_options`
become attributes of every channel (kombu copies them); pgcelery's app fills them from
``PGCELERY_*`` settings (docs/reference/broker.md).
"""

from __future__ import annotations

from kombu.transport import virtual

from pgcelery.broker import limits


class ChannelOptions(virtual.Channel):
    from_transport_options = (
        *virtual.Channel.from_transport_options,
        "visibility_timeout",
        "polling_interval",
        "listen",
        "schema",
        "async_commit",
        "binding_ttl",
        "broadcast_max_rows",
        "broadcast_max_age",
        "broadcast_prune_every",
        "events_poll_interval",
        "max_deliveries",
        "statement_timeout",
        "max_message_bytes",
        "fair_tenants",
    )
    visibility_timeout: float = 30.0
    polling_interval: float = 1.0
    listen: bool = True
    schema: str = "public"
    #: Claims, acks, rejects and releases commit without waiting for the WAL flush.
    async_commit: bool = True
    binding_ttl: float = 30.0
    broadcast_max_rows: int = 10_000
    broadcast_max_age: float = 600.0
    broadcast_prune_every: int = 100
    #: Seconds between an event receiver's reads of the broadcast log (pgcelery.broker.broadcast).
    events_poll_interval: float = 0.1
    #: Deliveries without an ack after which a message goes to the dead letters (0: no limit).
    max_deliveries: int = 5
    #: Seconds a broker statement may run before the server cancels it (0: no limit).
    statement_timeout: float = 30.0
    #: Largest serialized message published or delivered (pgcelery.broker.limits).
    max_message_bytes: int = limits.DEFAULT_MAX_MESSAGE_BYTES
    #: Claim round-robin across tenant groups (pgcelery.broker.claim_sql).
    fair_tenants: bool = True
