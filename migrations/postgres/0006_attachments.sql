-- Read model of message attachments (seed 002), part of the `chats` projection.
CREATE TABLE attachments (
    id         UUID PRIMARY KEY,
    message_id UUID NOT NULL,
    chat_id    UUID NOT NULL,
    file_type  TEXT NOT NULL,
    file_path  TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX attachments_by_message ON attachments (message_id, created_at);
CREATE INDEX attachments_by_chat ON attachments (chat_id);
