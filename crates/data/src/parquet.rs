//! Parquet files as Hugging Face datasets publish them: text columns, message lists as lists of
//! structs, images and audio as `{bytes, path}` structs (or bare binary columns). Each row is
//! turned into the JSON record the other formats use, so one mapping (`dataset.columns`) serves
//! all formats.

use std::path::Path;

use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;
use serde_json::{Map, Value};

use crate::error::{DataError, Origin, SampleError};
use crate::format::{Columns, Record, sample_from_json};

/// A Parquet value as JSON; binary becomes `{"bytes": [...]}` (what media fields take).
fn to_json(f: &Field) -> Value {
    match f {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(x) => (*x).into(),
        Field::Short(x) => (*x).into(),
        Field::Int(x) => (*x).into(),
        Field::Long(x) => (*x).into(),
        Field::UByte(x) => (*x).into(),
        Field::UShort(x) => (*x).into(),
        Field::UInt(x) => (*x).into(),
        Field::ULong(x) => (*x).into(),
        Field::Float16(x) => f64::from(f32::from(*x)).into(),
        Field::Float(x) => f64::from(*x).into(),
        Field::Double(x) => (*x).into(),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => {
            let mut o = Map::new();
            o.insert(
                "bytes".into(),
                Value::Array(b.data().iter().map(|&x| x.into()).collect()),
            );
            Value::Object(o)
        }
        Field::Group(row) => Value::Object(
            row.get_column_iter()
                .map(|(k, v)| (k.clone(), to_json(v)))
                .collect(),
        ),
        Field::ListInternal(list) => Value::Array(list.elements().iter().map(to_json).collect()),
        Field::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Field::Str(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        // dates, times, decimals: as Parquet prints them
        other => Value::String(other.to_string()),
    }
}

/// Read every row of a Parquet file as a record (`record N` = 0-based row).
pub fn read_parquet_file(path: &Path, cols: &Columns) -> Result<Vec<Record>, DataError> {
    // the parquet crate asserts on some malformed metadata (a negative column offset, found by
    // `cargo xtask fuzz`): that is an unreadable file too, not the end of the program
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_rows(path, cols))).unwrap_or_else(
        |panic| {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "malformed data".into());
            Err(DataError::File {
                path: path.to_path_buf(),
                message: format!("not a readable Parquet file: the reader stopped on {why}"),
            })
        },
    )
}

fn read_rows(path: &Path, cols: &Columns) -> Result<Vec<Record>, DataError> {
    let file_err = |message: String| DataError::File {
        path: path.to_path_buf(),
        message,
    };
    // read whole: column chunk and page sizes then index the file's bytes, so a size the file
    // cannot hold is an error, not an allocation of that size (a File reader reserves what the
    // metadata claims: 12 GB for a corrupted 1 kB file, found by `cargo xtask fuzz`)
    let data = std::fs::read(path).map_err(|e| file_err(format!("cannot read: {e}")))?;
    let reader = SerializedFileReader::new(bytes::Bytes::from(data))
        .map_err(|e| file_err(format!("not a readable Parquet file: {e}")))?;
    check_dictionaries(&reader)
        .map_err(|e| file_err(format!("not a readable Parquet file: {e}")))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| file_err(format!("not a readable Parquet file: {e}")))?;
    for (i, row) in rows.enumerate() {
        let origin = Origin {
            file: path.to_path_buf(),
            position: i,
            is_line: false,
        };
        let sample = match row {
            Ok(row) => {
                let v = Value::Object(
                    row.get_column_iter()
                        .map(|(k, v)| (k.clone(), to_json(v)))
                        .collect(),
                );
                sample_from_json(&v, cols, base)
            }
            // a page that will not decode ends the file: the rest cannot be located
            Err(e) => {
                out.push(Record {
                    origin,
                    sample: Err(SampleError::Malformed(format!("unreadable row: {e}"))),
                });
                break;
            }
        };
        out.push(Record { origin, sample });
    }
    Ok(out)
}

/// Refuse a dictionary page whose value count its bytes cannot hold: the parquet crate sizes a
/// dictionary by that count before decoding it (a corrupted 1 kB file asked for 12 GB, found by
/// `cargo xtask fuzz`). A page that does not decode is left to the row reader, which reports it.
fn check_dictionaries(reader: &SerializedFileReader<bytes::Bytes>) -> Result<(), String> {
    use parquet::basic::Type;
    use parquet::column::page::Page;
    for g in 0..reader.num_row_groups() {
        let Ok(group) = reader.get_row_group(g) else {
            continue;
        };
        for c in 0..group.num_columns() {
            let column = group.metadata().column(c);
            // the fewest bytes a plain-encoded value takes (booleans: one bit)
            let bits: u64 = match column.column_type() {
                Type::BOOLEAN => 1,
                Type::INT32 | Type::FLOAT | Type::BYTE_ARRAY => 32,
                Type::INT64 | Type::DOUBLE => 64,
                Type::INT96 => 96,
                Type::FIXED_LEN_BYTE_ARRAY => 8 * column.column_descr().type_length().max(0) as u64,
            };
            let Ok(mut pages) = group.get_column_page_reader(c) else {
                continue;
            };
            while let Ok(Some(page)) = pages.get_next_page() {
                if let Page::DictionaryPage {
                    buf, num_values, ..
                } = &page
                    && u64::from(*num_values) * bits > 8 * buf.len() as u64
                {
                    return Err(format!(
                        "row group {g}, column {}: a dictionary page says it holds {num_values} values in {} bytes",
                        column.column_path(),
                        buf.len()
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parquet::data_type::{ByteArray, ByteArrayType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use parquet::schema::parser::parse_message_type;

    use super::*;
    use crate::conversation::Media;
    use crate::format::Sample;

    /// A file like HF's image-QA datasets: `question`, `answer` (strings) and `image` as a
    /// `{bytes, path}` struct, snappy-compressed.
    fn write(path: &Path, rows: &[(&str, &str, &[u8])]) {
        let schema = Arc::new(
            parse_message_type(
                "message schema {
                    required binary question (UTF8);
                    required binary answer (UTF8);
                    required group image {
                        required binary bytes;
                        optional binary path (UTF8);
                    }
                }",
            )
            .unwrap(),
        );
        let props = Arc::new(
            WriterProperties::builder()
                .set_compression(parquet::basic::Compression::SNAPPY)
                .build(),
        );
        let mut w =
            SerializedFileWriter::new(std::fs::File::create(path).unwrap(), schema, props).unwrap();
        let mut rg = w.next_row_group().unwrap();
        let columns: [Vec<ByteArray>; 3] = [
            rows.iter().map(|r| ByteArray::from(r.0)).collect(),
            rows.iter().map(|r| ByteArray::from(r.1)).collect(),
            rows.iter().map(|r| ByteArray::from(r.2.to_vec())).collect(),
        ];
        for values in &columns {
            let mut c = rg.next_column().unwrap().unwrap();
            c.typed::<ByteArrayType>()
                .write_batch(values, None, None)
                .unwrap();
            c.close().unwrap();
        }
        // the optional path: null everywhere (definition level 0: the path is absent)
        let mut c = rg.next_column().unwrap().unwrap();
        c.typed::<ByteArrayType>()
            .write_batch(&[], Some(&vec![0; rows.len()]), None)
            .unwrap();
        c.close().unwrap();
        rg.close().unwrap();
        w.close().unwrap();
    }

    #[test]
    fn hf_style_parquet_rows_become_samples_with_image_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train-00000-of-00001.parquet");
        write(
            &path,
            &[
                ("What is it?", "A cat.", b"\x89PNG..."),
                ("And this?", "A dog.", b""),
            ],
        );
        let cols = Columns {
            prompt: "question".into(),
            completion: "answer".into(),
            ..Default::default()
        };
        let recs = read_parquet_file(&path, &cols).unwrap();
        assert_eq!(recs.len(), 2);
        let Ok(Sample::Chat(c)) = &recs[0].sample else {
            panic!("{:?}", recs[0].sample)
        };
        assert_eq!(c.media().0, [&Media::Bytes(b"\x89PNG...".to_vec())]);
        assert_eq!(c.messages[1].text_content(), "A cat.");
        assert_eq!(
            recs[1].origin.to_string(),
            format!("{} record 1", path.display())
        );

        std::fs::write(&path, b"not parquet").unwrap();
        let err = read_parquet_file(&path, &cols).unwrap_err().to_string();
        assert!(
            err.contains("Parquet") && err.contains("train-00000"),
            "{err}"
        );
    }

    #[test]
    fn a_file_the_parquet_crate_panics_on_is_an_error() {
        // found by `cargo xtask fuzz`: a column chunk whose offset is negative makes the parquet
        // crate assert
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/fuzz-negative-offset.parquet");
        let e = read_parquet_file(&path, &Columns::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("the reader stopped on"), "{e}");
        assert!(e.contains("fuzz-negative-offset.parquet"), "{e}");
    }

    #[test]
    fn a_page_header_with_a_huge_list_is_refused_at_once() {
        // found by `cargo xtask fuzz`: a corrupted page header whose list claims millions of
        // elements past the end of the file took 60–170 s to refuse (parquet 60.1's reader
        // skipped them one by one without noticing the end; 60.2 stops at it)
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz-thrift-skip.parquet");
        let start = std::time::Instant::now();
        let records = read_parquet_file(&path, &Columns::default()).unwrap();
        assert!(start.elapsed().as_secs() < 10, "{:?}", start.elapsed());
        let last = records.last().expect("the unreadable row is reported");
        let e = last.sample.as_ref().unwrap_err().to_string();
        assert!(e.contains("unreadable row"), "{e}");
    }

    #[test]
    fn a_dictionary_larger_than_its_page_is_refused_before_allocating() {
        // found by `cargo xtask fuzz`: a dictionary page of 9 bytes saying it holds 377 million
        // values made the parquet crate reserve 12 GB
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/fuzz-huge-dictionary.parquet");
        let e = read_parquet_file(&path, &Columns::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("fuzz-huge-dictionary.parquet"), "{e}");
        assert!(
            e.contains(
                "column \"image.path\": a dictionary page says it holds 377037861 values in 9 bytes"
            ),
            "{e}"
        );
    }
}
