"""What keeps one tenant from hurting another: request rates (``ratelimit``, split by the live
process count from ``instances``), the jobs-in-flight cap (``quota``), held-thread slots
(``holds``), and large-upload slots and pace (``uploads``)."""
