"""The `store` fixture (a store on the session's SeaweedFS) for every test here."""

from inspect_support import store_fixture  # noqa: F401  (pytest finds it as `store`)
