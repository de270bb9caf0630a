"""The qmp source: QEMU without libvirt (Proxmox VE, plain QEMU), over each VM's QMP socket.

- replies.py: what a QMP reply may hold, checked (ProtocolError otherwise);
- protocol.py: one VM's commands, each reply's handler and the QMP framing, without a socket;
- exchange.py: every VM's socket side by side from one thread, with its timeout and bounds;
- source.py: QmpSource, which polls them and turns each VM's answers into its sample.
"""

from .source import QmpSource

__all__ = ["QmpSource"]
