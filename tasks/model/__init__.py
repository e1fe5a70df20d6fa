"""The PrismRec model: a language-model item tower and a multi-interest user tower."""
