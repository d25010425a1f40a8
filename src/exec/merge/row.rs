//! DataRow bodies: splitting them into column slices that share the received buffer, and
//! building new ones for rows the proxy computes itself (aggregates).

use bytes::{BufMut, Bytes, BytesMut};

use super::MergeError;

/// Splits a DataRow body (`i16` count, then per column an `i32` length, -1 for NULL, and the
/// bytes) into its columns without copying. Malformed input is an error, never a panic: the
/// bytes come from a server and a bug there must not take the proxy down.
pub fn split_row(body: &Bytes) -> Result<Vec<Option<Bytes>>, MergeError> {
    let b: &[u8] = body;
    if b.len() < 2 {
        return Err(MergeError::MalformedRow("shorter than its column count"));
    }
    let count = i16::from_be_bytes([b[0], b[1]]);
    if count < 0 {
        return Err(MergeError::MalformedRow("negative column count"));
    }
    let mut cols = Vec::with_capacity(count as usize);
    let mut pos = 2usize;
    for _ in 0..count {
        let len_bytes = b
            .get(pos..pos + 4)
            .ok_or(MergeError::MalformedRow("truncated column length"))?;
        let len = i32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
        pos += 4;
        if len == -1 {
            cols.push(None);
            continue;
        }
        if len < 0 {
            return Err(MergeError::MalformedRow(
                "negative column length other than -1",
            ));
        }
        let end = pos
            .checked_add(len as usize)
            .filter(|end| *end <= b.len())
            .ok_or(MergeError::MalformedRow("column runs past the end"))?;
        cols.push(Some(body.slice(pos..end)));
        pos = end;
    }
    if pos != b.len() {
        return Err(MergeError::MalformedRow(
            "trailing bytes after the last column",
        ));
    }
    Ok(cols)
}

/// The raw bytes of one column (`None` for NULL); the error says which column was missing.
pub fn column(cols: &[Option<Bytes>], index: usize) -> Result<Option<&Bytes>, MergeError> {
    cols.get(index)
        .map(Option::as_ref)
        .ok_or(MergeError::MissingColumn {
            wanted: index,
            actual: cols.len(),
        })
}

/// Builds a DataRow body (without the type byte and length) from column values.
pub fn build_row<T: AsRef<[u8]>>(values: &[Option<T>]) -> Result<Bytes, MergeError> {
    let count = i16::try_from(values.len())
        .map_err(|_| MergeError::MalformedRow("more than 32767 columns"))?;
    let size = 2 + values
        .iter()
        .map(|v| 4 + v.as_ref().map_or(0, |v| v.as_ref().len()))
        .sum::<usize>();
    let mut b = BytesMut::with_capacity(size);
    b.put_i16(count);
    for v in values {
        match v {
            None => b.put_i32(-1),
            Some(v) => {
                let v = v.as_ref();
                let len = i32::try_from(v.len())
                    .map_err(|_| MergeError::MalformedRow("column longer than 2 GiB"))?;
                b.put_i32(len);
                b.put_slice(v);
            }
        }
    }
    Ok(b.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_zero_copy() {
        let body = build_row(&[Some(&b"abc"[..]), None, Some(&b""[..])]).unwrap();
        assert_eq!(
            &body[..],
            b"\x00\x03\x00\x00\x00\x03abc\xff\xff\xff\xff\x00\x00\x00\x00"
        );
        let cols = split_row(&body).unwrap();
        assert_eq!(cols.len(), 3);
        assert_eq!(cols[0].as_deref(), Some(&b"abc"[..]));
        assert_eq!(cols[1], None);
        assert_eq!(cols[2].as_deref(), Some(&b""[..]));
        // The slice points into the original buffer.
        let c0 = cols[0].as_ref().unwrap();
        assert_eq!(c0.as_ptr(), body[6..].as_ptr());
        assert_eq!(column(&cols, 1).unwrap(), None);
        assert_eq!(
            column(&cols, 3),
            Err(MergeError::MissingColumn {
                wanted: 3,
                actual: 3
            })
        );
    }

    #[test]
    fn empty_row() {
        let body = build_row::<&[u8]>(&[]).unwrap();
        assert_eq!(split_row(&body).unwrap(), Vec::<Option<Bytes>>::new());
    }

    #[test]
    fn malformed_rows_are_errors() {
        for bad in [
            &b""[..],
            b"\x00",
            b"\xff\xff",
            b"\x00\x01",
            b"\x00\x01\x00\x00",
            b"\x00\x01\x00\x00\x00\x05abc",
            b"\x00\x01\xff\xff\xff\xfe",
            b"\x00\x01\x7f\xff\xff\xff",
            b"\x00\x01\xff\xff\xff\xffextra",
            b"\x00\x00x",
        ] {
            assert!(split_row(&Bytes::copy_from_slice(bad)).is_err(), "{bad:?}");
        }
    }
}
