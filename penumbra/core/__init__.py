"""The pure core: protocol and state machines.  No I/O, no clocks.

Nothing in this package imports trio, simpy, socket, threading, asyncio,
multiprocessing, time or random, or reads a clock: time arrives as the ``now``
argument of ``handle``; randomness as a seeded generator passed in.  The
drivers in ``penumbra.sim`` and ``penumbra.transports`` feed events in and
carry commands out.
"""
