"""The broker: how a message travels from a producer's ``INSERT`` to a worker's ack.

Owns pgcelery's kombu transport (``transport``) and its channel (``channel``): publishing,
``FOR UPDATE SKIP LOCKED`` claims (``message_sql``), lease renewal (``leases``), acks that delete
(``acks``), shared bindings and the fanout log (``bindings``, ``broadcast``), the rows of
per-consumer queues and the fence that lets them be pruned (``queue_rows``), the process-wide
``LISTEN`` connection (``listener``), enqueue inside the caller's transaction
(``transactional``), publishing from an event loop (``recording``, ``async_publish``), a
group's messages in one INSERT (``bulk``), unique sends (``unique``), paused queues
(``pauses``) and the size limit and tenant column of a published message (``limits``).

May import: ``pgcelery.exceptions``, ``dsn``, ``settings``, ``connections``, ``event_loops`` and
``pgcelery.schema``. Never the app factory, the CLI, results, tenancy, observability or the
dashboard: everything above builds on the broker, not the other way round.
"""
