"""``make bench``: the supervisor measured against a bare aiohttp server, both real processes.

Every figure is printed next to a baseline measured in the same run, with the ratio and the
target it is held to. :mod:`bench.run` orchestrates, :mod:`bench.procs` spawns and stops the
server processes, :mod:`bench.load` generates the load, :mod:`bench.bare` is the baseline
server and :mod:`bench.report` renders the markdown table.
"""
