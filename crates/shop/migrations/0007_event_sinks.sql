-- The sinks this deployment delivers events to. Each instance adds the
-- sinks it names when it starts; an event is delivered once every sink
-- listed here took it, and a relay sends an event only to its own sinks.
-- So instances that name different sinks (a rolling change of
-- configuration) never mark an event delivered that a sink still lacks.
-- `shop sinks retire NAME` removes a sink no instance delivers to any more.
CREATE TABLE event_sinks (
    name          text        PRIMARY KEY,
    registered_at timestamptz NOT NULL DEFAULT now()
);
