"""The one registry of topics, and the codecs for what travels on them."""
