-- Read model of message attachments (seed 002), part of the `chats` projection.
CREATE TABLE attachments (
    id         BLOB PRIMARY KEY,
    message_id BLOB NOT NULL,
    chat_id    BLOB NOT NULL,
    file_type  TEXT NOT NULL,
    file_path  TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX attachments_by_message ON attachments (message_id, created_at);
CREATE INDEX attachments_by_chat ON attachments (chat_id);
