"""Jobs: submit, read, cancel (``routes``), their event streams (``events``) and waits
(``waits``), the job store, and the Listen machinery that follows job documents (``watch``,
``listen``)."""
