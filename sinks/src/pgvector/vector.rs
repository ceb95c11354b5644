//! pgvector's `vector` in PostgreSQL's binary format (its `vector_send`): the dimension as a
//! big-endian int16, an unused int16, then each value as a big-endian float4. Binary COPY
//! writes vectors through this, so no value goes through text.

use bytes::{BufMut, BytesMut};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};

/// A borrowed vector, written as pgvector's `vector`.
#[derive(Debug)]
pub struct PgVector<'a>(pub &'a [f32]);

impl ToSql for PgVector<'_> {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        let dim = u16::try_from(self.0.len()).map_err(|_| format!("a vector of {} dimensions", self.0.len()))?;
        out.reserve(4 + 4 * self.0.len());
        out.put_u16(dim);
        out.put_u16(0);
        for x in self.0 {
            out.put_f32(*x);
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        ty.name() == "vector"
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_are_written_as_vector_send_writes_them() {
        let mut out = BytesMut::new();
        PgVector(&[1.0, -0.5]).to_sql(&Type::TEXT, &mut out).unwrap();
        assert_eq!(&out[..], &[0, 2, 0, 0, 0x3f, 0x80, 0, 0, 0xbf, 0, 0, 0]);
    }
}
