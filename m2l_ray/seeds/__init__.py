"""Seeds: reading the seed pool, normalising its rows, quarantining the unusable ones.

- ``records``: ``Seed``, ``Quarantined``, ``ReadCounts`` (what every reader produces);
- ``shapes``: the input shapes a seed row can come in (one ``SeedShape`` each);
- ``files``: which files a source names, their format, their bytes as lines;
- ``reader``: rows of a file, normalised to a ``Seed`` (the in-memory reader);
- ``intake``: the pool read on Ray Data when it is large, with the same answer.

Nothing is imported here: ``config`` imports ``seeds.shapes`` for the shape names, and
the readers import ``config``, so this package's import must stay free of both.
"""
