"""telegraf-balloon: VM memory ballooning for Telegraf's inputs.execd."""

__version__ = "0.1.0"
