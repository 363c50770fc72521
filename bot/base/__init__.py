"""The base: errors and small value types shared by the whole bot and by ``actions``.

Imports nothing from the rest of ``bot`` nor from ``actions`` (an import contract
checks it), so both can build on it without importing each other's insides.
"""
