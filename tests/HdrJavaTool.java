// Drives HdrHistogram (Java) for tests/test_hdr_java.py; run as a single source file
// (`java -cp hdrhistogram.jar tests/HdrJavaTool.java MODE ...`), which the JRE alone can do.
//
//   write SPEC LOG  records the values SPEC lists into Java histograms, writes them to LOG
//                   with HistogramLogWriter and prints each one's uncompressed V2 encoding
//   dump LOG        reads LOG with HistogramLogReader and prints every interval's layout,
//                   times and non-empty buckets
//
// A SPEC line is: tag lowest highest significantFigures startMs endMs value,value,...
// with "-" for no tag; its first line is: startTimeMs baseTimeMs.
import java.io.BufferedReader;
import java.io.FileOutputStream;
import java.io.FileReader;
import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.util.Arrays;
import java.util.Base64;
import java.util.Locale;

import org.HdrHistogram.EncodableHistogram;
import org.HdrHistogram.Histogram;
import org.HdrHistogram.HistogramIterationValue;
import org.HdrHistogram.HistogramLogReader;
import org.HdrHistogram.HistogramLogWriter;

public class HdrJavaTool {
    public static void main(String[] args) throws Exception {
        if (args.length == 3 && args[0].equals("write")) {
            write(args[1], args[2]);
        } else if (args.length == 2 && args[0].equals("dump")) {
            dump(args[1]);
        } else {
            System.err.println("usage: write SPEC LOG | dump LOG");
            System.exit(2);
        }
    }

    static void write(String specPath, String logPath) throws Exception {
        try (BufferedReader spec = new BufferedReader(new FileReader(specPath));
             PrintStream out = new PrintStream(new FileOutputStream(logPath), false, "US-ASCII")) {
            String[] times = spec.readLine().trim().split(" ");
            HistogramLogWriter writer = new HistogramLogWriter(out);
            writer.outputLogFormatVersion();
            writer.outputStartTime(Long.parseLong(times[0]));
            writer.setBaseTime(Long.parseLong(times[1]));
            writer.outputBaseTime(Long.parseLong(times[1]));
            writer.outputLegend();
            String line;
            while ((line = spec.readLine()) != null) {
                String[] f = line.trim().split(" ");
                Histogram h = new Histogram(Long.parseLong(f[1]), Long.parseLong(f[2]),
                                            Integer.parseInt(f[3]));
                for (String value : f[6].split(",")) {
                    h.recordValue(Long.parseLong(value));
                }
                h.setStartTimeStamp(Long.parseLong(f[4]));
                h.setEndTimeStamp(Long.parseLong(f[5]));
                if (!f[0].equals("-")) {
                    h.setTag(f[0]);
                }
                writer.outputIntervalHistogram(h);
                ByteBuffer raw = ByteBuffer.allocate(h.getNeededByteBufferCapacity());
                int length = h.encodeIntoByteBuffer(raw);
                System.out.println(Base64.getEncoder().encodeToString(
                        Arrays.copyOf(raw.array(), length)));
            }
        }
    }

    static void dump(String logPath) throws Exception {
        HistogramLogReader reader = new HistogramLogReader(logPath);
        EncodableHistogram read;
        while ((read = reader.nextIntervalHistogram()) != null) {
            Histogram h = (Histogram) read;
            System.out.printf(Locale.US, "INTERVAL %s %d %d %d %d %d %d %d%n",
                    h.getTag() == null ? "-" : h.getTag(), h.getStartTimeStamp(),
                    h.getEndTimeStamp(), h.getLowestDiscernibleValue(),
                    h.getHighestTrackableValue(), h.getNumberOfSignificantValueDigits(),
                    h.getTotalCount(), h.getMaxValue());
            for (HistogramIterationValue v : h.recordedValues()) {
                long value = v.getValueIteratedTo();
                System.out.printf(Locale.US, "BUCKET %d %d %d%n", h.lowestEquivalentValue(value),
                        h.highestEquivalentValue(value), v.getCountAtValueIteratedTo());
            }
        }
    }
}
