"""The ground floor: what every layer above may use and nothing here knows of Kac flows.

=================  =====================================================================================
module             what it holds
=================  =====================================================================================
``checks``         input checks that raise one clear ``ValueError`` naming the parameter and its range
``checkpoint``     atomic checkpoint and JSON files, verified on load, with a fall-back to the previous copy
``progress``       progress lines for long loops (rate, ETA; a terminal bar or periodic log lines)
``seeds``          ``derive_seed``: independent seeds from integers (run, rank, step, batch)
``cli``            argparse conventions of the scripts: one-line errors, thread defaults, output folders
``legacy``         the module names of the flat layout (``kacnum.kac``, ``kacnum.paths``, ...) as aliases
=================  =====================================================================================
"""
