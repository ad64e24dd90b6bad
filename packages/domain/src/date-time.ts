/**
 * ISO 8601 dates and date-times as the API and the CLI take them: `YYYY-MM-DD`, optionally `THH:MM`, `:SS`,
 * `.fraction` (1-9 digits) and a zone (`Z`, `±HH:MM` or `±HHMM`).
 */
const ISO_DATE_TIME =
  /^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?(Z|[+-](\d{2}):?(\d{2}))?)?$/;

/** Whether the date and time fields name a real instant: no 30 February, no hour 24, no offset of 25 hours. */
function hasValidFields(fields: RegExpExecArray): boolean {
  const [, year, month, day, hour, minute, second, , offsetHours, offsetMinutes] = fields.map(Number);
  const daysInMonth = new Date(Date.UTC(year as number, month as number, 0)).getUTCDate();
  return (
    (month as number) >= 1 &&
    (month as number) <= 12 &&
    (day as number) >= 1 &&
    (day as number) <= daysInMonth &&
    (fields[4] === undefined || ((hour as number) <= 23 && (minute as number) <= 59)) &&
    (fields[6] === undefined || (second as number) <= 59) &&
    (fields[8] === undefined || ((offsetHours as number) <= 23 && (offsetMinutes as number) <= 59))
  );
}

export type ParseIsoDateTimeOptions = {
  /**
   * How a date-time without a zone is read: `local` (the default, as `new Date` reads it: the host's time zone) or
   * `utc`. A date alone is always midnight UTC (as `new Date` reads it).
   */
  zoneless?: "local" | "utc";
};

/**
 * The instant an ISO 8601 date or date-time names, or undefined when the text is not one or a field is not real
 * (30 February, 29 February of a common year, 31 April, hour 24, minute 60, second 60, offset hour 24...): nothing
 * rolls over into the next day or month, as `new Date` alone would do.
 */
export function parseIsoDateTime(text: string, options: ParseIsoDateTimeOptions = {}): Date | undefined {
  const fields = ISO_DATE_TIME.exec(text);
  if (fields === null || !hasValidFields(fields)) return undefined;
  const zoneless = fields[4] !== undefined && fields[7] === undefined;
  const parsed = new Date(zoneless && options.zoneless === "utc" ? `${text}Z` : text);
  return Number.isNaN(parsed.getTime()) ? undefined : parsed;
}
