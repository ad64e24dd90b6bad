import {
  DiscardPolicy,
  JetStreamApiError,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type StreamInfo,
} from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { eventSubjectFilter } from "./subjects";

export type EventStreamConfig = {
  streamName: string;
  subjectPrefix: string;
  /** JetStream drops a republished `msgID` seen within this window (default 2 minutes). */
  duplicateWindowMs?: number;
};

export const DEFAULT_DUPLICATE_WINDOW_MS = 120_000;
const STREAM_NOT_FOUND = 10059;

/** Creates the event stream if it is missing, or adds the event subjects to an existing stream of that name. */
export async function ensureEventStream(nc: NatsConnection, config: EventStreamConfig): Promise<StreamInfo> {
  const jsm = await jetstreamManager(nc);
  const subject = eventSubjectFilter(config.subjectPrefix);
  try {
    const info = await jsm.streams.info(config.streamName);
    if (info.config.subjects?.includes(subject)) return info;
    return await jsm.streams.update(config.streamName, { subjects: [...(info.config.subjects ?? []), subject] });
  } catch (error) {
    if (!(error instanceof JetStreamApiError) || error.code !== STREAM_NOT_FOUND) throw error;
  }
  return jsm.streams.add({
    name: config.streamName,
    subjects: [subject],
    storage: StorageType.File,
    retention: RetentionPolicy.Limits,
    discard: DiscardPolicy.Old,
    duplicate_window: (config.duplicateWindowMs ?? DEFAULT_DUPLICATE_WINDOW_MS) * 1_000_000,
  });
}

/** Deletes a stream if it exists (tests and operators). */
export async function deleteEventStream(nc: NatsConnection, streamName: string): Promise<void> {
  const jsm = await jetstreamManager(nc);
  try {
    await jsm.streams.delete(streamName);
  } catch (error) {
    if (!(error instanceof JetStreamApiError) || error.code !== STREAM_NOT_FOUND) throw error;
  }
}
