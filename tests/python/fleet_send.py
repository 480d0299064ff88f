#!/usr/bin/env python3
"""Sends `fetch_feed` jobs with the real Celery client, in batches the caller asks for.

    fleet_send.py BROKER_URL FEED_BASE_URL QUEUE

Reads lines `FIRST END` from stdin; for each, sends jobs FIRST..END-1 and prints
`sent FIRST END` (flushed) once they are queued (confirmed by RabbitMQ on AMQP). Job i has the task id `fleet_id(i)` (a UUID, so the test
knows every id without reading them back) and fetches `FEED_BASE_URL/<its id>`, so the
feed server counts each job's executions and sees which host ran them. Exits at EOF.

A fire-and-forget producer (no result backend: with one, the client would subscribe to
every task's result channel); the test reads what the Sprout workers stored.
"""
import sys

from celery import Celery


def fleet_id(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012d}"


def main(argv):
    broker, base, queue = argv
    app = Celery("fleet_send", broker=broker)
    if broker.startswith("amqp"):
        # Each publish waits for RabbitMQ's confirm, so "sent" means queued. Without it
        # the last batch could still sit unread in RabbitMQ's socket when this process
        # exits, and closing with data unread resets the connection: those jobs were lost.
        app.conf.broker_transport_options = {"confirm_publish": True}
    with app.producer_or_acquire() as producer:
        for line in sys.stdin:
            first, end = map(int, line.split())
            for i in range(first, end):
                tid = fleet_id(i)
                app.send_task(
                    "fetch_feed",
                    (f"{base}/{tid}",),
                    task_id=tid,
                    queue=queue,
                    producer=producer,
                )
            print(f"sent {first} {end}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
